"""History and graphs of VE and node usage (vzpanel/metrics/README.md says how and why)."""
