"""What every trainer of the project shares: :mod:`.config` (YAML configs and ``key=value`` overrides),
:mod:`.training` (torchrun set-up, seeding, checkpoints with RNG states, mask digests, logging), :mod:`.results`
(the one atomic writer of results files, with provenance) and :mod:`.grid` (resumable reproduction grids).
Imports the core only, never an adapter."""
