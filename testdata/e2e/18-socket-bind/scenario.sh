# A bind mount of a bound unix socket, as a docker.sock volume is: the
# socket's inode exists only once the listener is restored, so CRIU 4.2
# cannot make the bind (in either mode); the hook makes it after CRIU has
# restored the socket.
mkdir -p /tmp/run /tmp/ct
mount -t tmpfs run /tmp/run
python3 - <<'PY' &
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("/tmp/run/d.sock")
s.listen(4)
open("/tmp/run/ready", "w").close()
time.sleep(1000000)
PY
for _ in $(seq 200); do [ -e /tmp/run/ready ] && break; sleep 0.02; done
touch /tmp/ct/d.sock
mount --bind /tmp/run/d.sock /tmp/ct/d.sock
