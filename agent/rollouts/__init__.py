"""Rollouts: moving an endpoint from its stable model version to a candidate by a plan of steps.

`plans` (default plans and their validation), `gate` (the validation gate before any traffic), `guards`
(live checks that abort a rollout), `abtest` (A/B statistics on posted outcomes), `engine` (the state
machine, its events and its thread), `metrics` (/metrics). See docs/rollouts.md.
"""
