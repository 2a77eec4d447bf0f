"""secretfs against its physical floor: tmpfs and a bare pyfuse3 filesystem, same run.

    .venv/bin/python -m bench            # the whole benchmark (about 3 minutes, as root)
    .venv/bin/python -m bench --quick    # smaller and fewer rounds, to try it out
    .venv/bin/python -m bench --compare bench/results/A.json bench/results/B.json

See README.md ("Benchmarks") and docs/performance.md.
"""
