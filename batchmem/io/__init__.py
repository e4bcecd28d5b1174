"""Sources, readers, output formats, sinks and the checkpoint: everything a run reads or writes."""
