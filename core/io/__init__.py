"""What SAIL Scope reads and writes: prompt files, the infotext registry, reports, atomic files and JSON lines."""
