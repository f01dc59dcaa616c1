"""The ground floor of the testbed: errors, registries, configuration and YAML loading.

Every other room imports from here and nothing here imports from them. The rooms, bottom to top:

    testbed      errors, registry, config, yamlio          (this package)
    sandbox      untrusted bundles: safe import, bubblewrap, the runner, executors (Ray or inline)
    pilots       the pilot catalogue: specs, vendor profiles
    evaluation   task families (one folder each), scorecard, report, tracking, leaderboard
    workflow     submit and evaluate (later: review, promote) wiring executors and trackers
    serving      production serving of promoted bundles
    cli          the `testbed` command and the demo
"""

from testbed import config as _config  # noqa: E402,F401 - first import of any room: sets the environment (Ray binds
# to loopback only if RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set before `ray` is first imported)
