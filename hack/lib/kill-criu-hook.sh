#!/bin/bash
# An action script for the e2e test of crash safety: runs mntv2 as the hook,
# then at action $MNTV2_KILL_AT kills CRIU (its parent, which the test
# started) with SIGKILL, after writing the restored root task's pid to
# $E2E_PIDFILE so the test can end it.
"$MNTV2" || exit $?
if [ "$CRTOOLS_SCRIPT_ACTION" = "$MNTV2_KILL_AT" ]; then
	echo "${CRTOOLS_INIT_PID:-}" >"$E2E_PIDFILE"
	kill -9 "$PPID"
	sleep 5
fi
exit 0
