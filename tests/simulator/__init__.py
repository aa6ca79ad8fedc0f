"""Tests of the standalone fleet simulator."""
