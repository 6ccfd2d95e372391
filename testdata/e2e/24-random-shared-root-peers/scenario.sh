# The container's root made shared, then a nested namespace (--propagation unchanged) whose
# root is its peer. mntv2 7ae472d (CRIU + hook): the same helper refusal as 02. Identical from
# main 58d23b3.
cd /
mkdir -p /.rt
mount --make-shared /
unshare --mount --propagation unchanged sh -c 'touch /.rt/ready; exec sleep 100001' </dev/null >/dev/null 2>&1 &
for _ in $(seq 500); do [ -e /.rt/ready ] && break; sleep 0.01; done
