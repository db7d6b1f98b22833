"""The read API over the latest snapshot."""
