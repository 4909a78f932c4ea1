"""Routing: which model serves a request.

* ``classifier`` — task category and complexity of a conversation (regex heuristics, µs budget);
* ``auto`` — ``model: "auto"``: the cheapest viable model of the tier the task needs;
* ``health``, ``mesh``, ``policies`` — live provider health, failover chains, org policies.

Import the submodules directly (``from apps.gateway.routing.auto import auto_choose``): this
package imports nothing itself, so importing one part never drags in the others (or the ORM).
"""
