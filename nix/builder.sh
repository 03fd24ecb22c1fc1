# The builder of nix/run.nix's derivations, run by the static busybox of
# the nixspawn bundle in a Nix uid-range sandbox: it makes the bundle's
# glibc-linked binaries runnable (the sandbox has no /lib; the build's
# root owns /), then runs the test script with nixspawn on $PATH, its
# output in the build log and in $out/log.
bundle=$nixspawn
mkdir -p /build/bin
"$bundle/bin/busybox" --install -s /build/bin
export PATH=$bundle/bin:/build/bin
mkdir -p /lib64 /lib/x86_64-linux-gnu
for l in "$bundle"/lib/*; do
	case "$l" in
	*/ld-linux*) ln -sf "$l" /lib64/ ;;
	*) ln -sf "$l" /lib/x86_64-linux-gnu/ ;;
	esac
done
mkdir -p "$out"
# State outside the sandbox's /run, as a builder that did not own / would need.
export NIXSPAWN_RUNTIME_DIR=/build/run
cd /build
{
	st=0
	sh -e "$scriptPath" 2>&1 </dev/null || st=$?
	echo "$st" >/build/status
} | tee "$out/log"
status=$(cat /build/status)
cp /build/status "$out/status"
if [ "$status" != 0 ]; then
	echo "nixspawn test $name failed with status $status; last lines:" >&2
	tail -n 5 "$out/log" >&2
	exit "$status"
fi
