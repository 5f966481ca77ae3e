"""Traffic routing: rules, weighted splits and click caps of a tracking link."""
