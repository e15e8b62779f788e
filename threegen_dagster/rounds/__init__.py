"""SN17 rounds today (competitions in rounds): round state, comp 0/1/2 outputs, their checks and judge-style renders. Pure logic, no Dagster imports."""
