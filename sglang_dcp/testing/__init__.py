"""Test support: a tiny random-weight model and a real-server fixture. No hub downloads, ever."""
