"""Config flow for V2G Fleet Dispatch."""

from __future__ import annotations

from typing import Any

from homeassistant.config_entries import ConfigFlow, ConfigFlowResult

from .const import DOMAIN


class V2GConfigFlow(ConfigFlow, domain=DOMAIN):
    """Create a fleet entry on top of Home Assistant's MQTT integration."""

    VERSION = 1

    async def async_step_user(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Create the entry."""
        return self.async_create_entry(title="V2G fleet", data={})
