"""Reserved for later work; see docs/architecture.md."""
