"""The Restate-compatible HTTP ingress, the admin API and UI, and the invocation index."""
