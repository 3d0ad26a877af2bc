"""Runtime environments: what a task's or actor's worker process runs with.

``packaging`` packs local folders into zips stored in the control store and
unpacks them on nodes; ``spec`` checks, merges and resolves the
``runtime_env`` dictionaries users pass; ``setup`` prepares a node's side.
"""
