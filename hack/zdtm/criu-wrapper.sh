#!/usr/bin/env bash
# zdtm's --criu-bin for hack/zdtm.sh: execs the real CRIU; for `restore`
# it adds `--action-script $ZDTM_HOOK` when ZDTM_HOOK is set (CRIU +
# mntv2). zdtm calls it as `WRAPPER ACTION --no-default-config ARGS...`
# (also for `check`, `dump`, ...: those pass through unchanged).
#
# Every call appends one line "ACTION TEST hook=HOOK|none" to
# ZDTM_WRAPPER_LOG, so the harness can check that the wrapper (and the
# hook) was really used for each test. With ZDTM_HOOK and
# ZDTM_MNTV2_LOGDIR set, mntv2 also appends its log to
# ZDTM_MNTV2_LOGDIR/TEST.log (MNTV2_LOG); its stderr lands in CRIU's
# restore.log either way.
#
# env: ZDTM_REAL_CRIU (required: the criu binary), ZDTM_HOOK,
#      ZDTM_WRAPPER_LOG, ZDTM_MNTV2_LOGDIR
set -euo pipefail

real=${ZDTM_REAL_CRIU:?criu-wrapper: ZDTM_REAL_CRIU is not set}
action=${1:-}

# The test's name, from the images directory zdtm passes
# (dump/zdtm/static/NAME/PID/ITER).
test=-
for a in "$@"; do
	case $a in
	*/zdtm/static/*/*)
		test=${a#*/zdtm/static/}
		test=${test%%/*}
		break
		;;
	esac
done

hook=none
if [ "$action" = restore ] && [ -n "${ZDTM_HOOK:-}" ]; then
	hook=$ZDTM_HOOK
fi
if [ -n "${ZDTM_WRAPPER_LOG:-}" ]; then
	printf '%s %s hook=%s\n' "$action" "$test" "$hook" >>"$ZDTM_WRAPPER_LOG"
fi

if [ "$hook" != none ]; then
	shift
	if [ -n "${ZDTM_MNTV2_LOGDIR:-}" ] && [ "$test" != - ]; then
		export MNTV2_LOG=$ZDTM_MNTV2_LOGDIR/$test.log
	fi
	exec "$real" restore --action-script "$hook" "$@"
fi
exec "$real" "$@"
