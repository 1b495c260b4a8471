"""A sampling run's samples: their noise (:mod:`.noise`) and requested labels (:mod:`.labels`)
going in; their shards (:mod:`.writer`), image grids (:mod:`.grid`) and per-timestep
diagnostics (:mod:`.diagnostics`) coming out."""
