# Sourced after each restore: the bind still is the listening socket.
if ! nsenter -t "$rpid" -m python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.connect("/tmp/ct/d.sock")' 2>/dev/null; then
	check_failed="connect to /tmp/ct/d.sock (the bind of the socket) failed"
fi
