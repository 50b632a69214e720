//! Unit tests for rendering and save parsing.
