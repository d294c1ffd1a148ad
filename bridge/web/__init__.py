"""The bridge's HTTP side (Flask): the app factory and one blueprint per concern."""
