# The netconverge package: binary, systemd unit, shell completions, man page.
# Build with `nix-build nix -A netconverge` or `nix build .#netconverge`.
{
  lib,
  stdenv,
  rustPlatform,
  installShellFiles,
  coreutils,
}:

let
  fs = lib.fileset;
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "netconverge";
  inherit (cargoToml.package) version;

  # Only what cargo and the install phase read: edits to docs/, nix/, the
  # NixOS examples or .ci/ do not rebuild the package. Optional crate parts
  # are maybeMissing so that adding benches/ or build.rs needs no edit here;
  # example configs (*.toml) are kept because tests may parse them.
  src = fs.toSource {
    root = ../.;
    fileset = fs.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      (fs.maybeMissing ../tests)
      (fs.maybeMissing ../benches)
      (fs.maybeMissing ../build.rs)
      (fs.fileFilter (file: file.hasExt "toml") ../examples)
      ../systemd
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ installShellFiles ];

  # tests/*.rs create network namespaces and need root (they fail loudly
  # without it); the Nix sandbox runs as an unprivileged build user. Run the
  # library's unit tests only (planner, config, rendering: pure and
  # snapshot-based); the netns integration tests run in the project's CI.
  cargoTestFlags = [ "--lib" ];

  postInstall =
    ''
      # The unit from systemd/, with store paths instead of FHS ones. It reads
      # /etc/netconverge/netconverge.toml, like the NixOS module.
      install -Dm644 systemd/netconverge.service $out/lib/systemd/system/netconverge.service
      substituteInPlace $out/lib/systemd/system/netconverge.service \
        --replace-fail /usr/local/bin/netconverge $out/bin/netconverge \
        --replace-fail /bin/mkdir ${coreutils}/bin/mkdir \
        --replace-fail /bin/kill ${coreutils}/bin/kill
      # An example, not installed as a live drop-in: adding this package to
      # systemd.packages must not change how k3s starts.
      install -Dm644 systemd/k3s-requires-netconverge.conf \
        $out/share/doc/netconverge/k3s-requires-netconverge.conf
    ''
    # Completions and the man page come from the binary itself (clap), so
    # they can only be generated when the build machine can run it.
    + lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
      installShellCompletion --cmd netconverge \
        --bash <($out/bin/netconverge completions bash) \
        --zsh <($out/bin/netconverge completions zsh) \
        --fish <($out/bin/netconverge completions fish)
      $out/bin/netconverge man > netconverge.1
      installManPage netconverge.1
    '';

  meta = {
    description = "Declarative, self-healing VXLAN overlay, NAT and flannel lease for k3s/flannel nodes";
    homepage = "https://example.invalid/netconverge";
    license = lib.licenses.asl20;
    mainProgram = "netconverge";
    platforms = lib.platforms.linux;
  };
}
