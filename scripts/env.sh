# Sourced by the scripts: one reused target dir and ccache for HiGHS's C++ build.
# CARGO_TARGET_DIR may be set by the caller; by default builds stay in ./target.
export CMAKE_C_COMPILER_LAUNCHER=ccache
export CMAKE_CXX_COMPILER_LAUNCHER=ccache
export CCACHE_NOHASHDIR=1
# With base dir / every absolute path hashes relative to the compile directory, so the
# build/test and check/clippy copies of HiGHS (same depth, different hash dirs) share entries.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-/}"
