"""limachat: LIMA multi-turn dialogue experiment as a tool."""
