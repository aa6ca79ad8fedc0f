"""End-to-end tests: real mosquitto, HA's real MQTT client, the simulator, real hass."""
