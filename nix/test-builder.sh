# The builder of nix/test.nix: the nixspawn bundle made runnable (as in
# builder.sh), node trees copied into the build, then nixspawn-test with
# its logs and JUnit report in $out. Fails the build with the test.
bundle=$nixspawn
mkdir -p /build/bin
"$bundle/bin/busybox" --install -s /build/bin
export PATH=$bundle/bin:$python3/bin:/build/bin
mkdir -p /lib64 /lib/x86_64-linux-gnu
for l in "$bundle"/lib/*; do
	case "$l" in
	*/ld-linux*) ln -sf "$l" /lib64/ ;;
	*) ln -sf "$l" /lib/x86_64-linux-gnu/ ;;
	esac
done
export NIXSPAWN_RUNTIME_DIR=/build/run
for t in $trees; do
	node=${t%%=*}
	mkdir -p /build/trees
	cp -a "${t#*=}" "/build/trees/$node"
	chown -R 0:0 "/build/trees/$node"
	chmod 755 "/build/trees/$node"
done
mkdir -p "$out"
st=0
nixspawn-test "$descriptionPath" --output-dir "$out/logs" --junit "$out/junit.xml" </dev/null || st=$?
echo "$st" >"$out/status"
if [ "$st" != 0 ]; then
	echo "nixspawn-test $name failed with status $st" >&2
	exit "$st"
fi
