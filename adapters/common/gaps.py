"""What the built-in backends do not do yet, as conformance gaps (``Backend.known_gaps``).

None today. Placement groups, node affinity and SPREAD over nodes (issue 15) run on every built-in backend:
'local' and 'multiprocess' reserve bundles on their one node (``placement_groups.py``), the cluster across
its nodes (``adapters/cluster/groups.py``). A gap is strict: once a backend does what a test asks, the test
fails until its gap is removed.
"""

from __future__ import annotations

LOCAL_GAPS: dict = {}
MULTIPROCESS_GAPS: dict = {}
CLUSTER_GAPS: dict = {}
