"""What every trainer of the project shares: :mod:`.config` (YAML configs and ``key=value`` overrides),
:mod:`.training` (torchrun set-up, seeding, checkpoints with RNG states, mask digests and validity, per-step
times, logging), :mod:`.cli` (the trainers' ``--config/--resume/overrides`` command line and the reproductions'
``--help``), :mod:`.results` (the one atomic writer of results files, with provenance), :mod:`.grid` (resumable
reproduction grids), :mod:`.reproduce` (claims and the threshold check of a reproduction) and :mod:`.project`
(where configs/ and ci/thresholds/ are: ``NM_SPARSITY_ROOT``). Imports the core only, never an adapter."""
