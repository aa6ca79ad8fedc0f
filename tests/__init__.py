"""Tests for V2G Fleet Dispatch."""
