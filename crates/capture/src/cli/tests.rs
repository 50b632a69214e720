//! Unit tests for flag handling.
