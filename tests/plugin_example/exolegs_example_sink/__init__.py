"""Placeholder until the sink base class lands."""
