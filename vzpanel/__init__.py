"""vzpanel: the web panel for vzengine VEs."""
