# The builder of nix/test.nix: the nixspawn bundle and the interpreter
# made runnable (as in builder.sh), node trees copied into the build, then
# nixspawn-test with its output in the build log and $out/log, the
# console logs, timeline and JUnit report in $out. Fails the build with
# the test.
bundle=$nixspawn
mkdir -p /build/bin
"$bundle/bin/busybox" --install -s /build/bin
export PATH=$bundle/bin:$python3/bin:/build/bin
# Bundles of glibc-linked binaries not built by Nix bring their loader
# and libraries; the sandbox has no /lib, and the build's root owns /.
# (Binaries from nixpkgs carry their own paths: their lib/ has none.)
mkdir -p /lib64 /lib/x86_64-linux-gnu
for l in "$bundle"/lib/* "$python3"/lib/*.so*; do
	[ -f "$l" ] || continue
	case "$l" in
	*/ld-linux*) ln -sf "$l" /lib64/ ;;
	*) [ -e "/lib/x86_64-linux-gnu/${l##*/}" ] || ln -s "$l" /lib/x86_64-linux-gnu/ ;;
	esac
done
# State outside the sandbox's /run, as a builder that did not own / would need.
export NIXSPAWN_RUNTIME_DIR=/build/run
mkdir -p /build/trees
for c in $copies; do
	dest=${c%%=*}
	cp -a "${c#*=}" "$dest"
	chown -R 0:0 "$dest"
	chmod 755 "$dest"
done
# exportReferencesGraph's records are: path, deriver, count, references.
for n in $toplevels; do
	awk 'r == 0 { print; r = -1; next } r == -1 { r = -2; next }
	     r == -2 { r = $1; next } { r-- }' "/build/graph-$n" >"/build/closure-$n"
done
mkdir -p "$out"
cd /build
{
	st=0
	nixspawn-test "$descriptionPath" --output-dir "$out/logs" --junit "$out/junit.xml" 2>&1 </dev/null || st=$?
	echo "$st" >/build/status
} | tee "$out/log"
status=$(cat /build/status)
cp /build/status "$out/status"
if [ "$status" != 0 ]; then
	echo "nixspawn-test $name failed with status $status" >&2
	exit "$status"
fi
