"""Where a program runs: the device mesh and placement rules (`sharding`), the processes of a
`jax.distributed` job (`multihost`), command-line setup (`cli`), paths on disk or in buckets (`paths`)
and the huge-page restart (`host_memory`)."""
