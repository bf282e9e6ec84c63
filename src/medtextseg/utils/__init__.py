"""Small shared utilities: atomic file writes and the project's error type."""
