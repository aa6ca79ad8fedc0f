"""Home Assistant custom integrations (namespace for tests and HACS layout)."""
