# A nested mount namespace made with --propagation shared: its root mount is shared.
# mntv2 7ae472d (CRIU + hook): pre-restore refused: "peer group N needs a helper mount of root
# \"/\", and none of its mounts is a leaf to stack it on". Identical from main 58d23b3.
cd /
mkdir -p /.rt
unshare --mount --propagation shared sh -c 'touch /.rt/ready; exec sleep 100001' </dev/null >/dev/null 2>&1 &
for _ in $(seq 500); do [ -e /.rt/ready ] && break; sleep 0.01; done
