"""The workflow: what a person does with the testbed, wiring the rooms below it. Submit a bundle, evaluate it
(an executor runs the sandbox, a tracker records the run), and later review and promote it."""
