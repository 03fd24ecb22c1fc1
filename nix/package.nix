# nixspawn, nixspawnctl and nixspawn-test built from this checkout with
# nixpkgs' Rust tooling, with man pages and shell completions; used by
# flake.nix and default.nix (pkgs.callPackage ./nix/package.nix { }).
{ lib, rustPlatform, installShellFiles }:
rustPlatform.buildRustPackage {
  pname = "nixspawn";
  version = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).workspace.package.version;
  # Tracked sources only matter; a local target/ would be gigabytes.
  src = lib.cleanSourceWith {
    src = lib.cleanSource ../.;
    filter = path: type: !(type == "directory" && baseNameOf path == "target");
  };
  cargoLock.lockFile = ../Cargo.lock;
  # The test suite boots containers as root; it runs outside the build
  # sandbox (integration/test.sh), not here.
  doCheck = false;
  nativeBuildInputs = [ installShellFiles ];
  # Man pages and completions, generated from the clap definitions by
  # nixspawnctl's hidden generate-docs verb.
  postInstall = ''
    $out/bin/nixspawnctl generate-docs docs
    installManPage docs/man/*.1
    installShellCompletion --cmd nixspawn \
      --bash docs/completions/nixspawn.bash \
      --zsh docs/completions/_nixspawn \
      --fish docs/completions/nixspawn.fish
    installShellCompletion --cmd nixspawnctl \
      --bash docs/completions/nixspawnctl.bash \
      --zsh docs/completions/_nixspawnctl \
      --fish docs/completions/nixspawnctl.fish
  '';
  meta = {
    description = "Container launcher for NixOS toplevels and systemd trees, systemd-nspawn compatible";
    license = with lib.licenses; [ mit asl20 ];
    platforms = lib.platforms.linux;
    mainProgram = "nixspawn";
  };
}
