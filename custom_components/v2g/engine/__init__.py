"""Pure dispatch engine: no Home Assistant import, no I/O, no clock reads."""
