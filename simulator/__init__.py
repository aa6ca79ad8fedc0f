"""Standalone EV fleet simulator speaking the V2G Fleet Dispatch MQTT protocol."""
