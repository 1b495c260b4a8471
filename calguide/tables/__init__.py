"""Tables from sweeps: runs read back (:mod:`.records`), grouped into rows (:mod:`.summary`),
written as markdown and CSV (:mod:`.render`) and drawn (:mod:`.plots`)."""
