// pull_and_expose.mjs: RGTP from Node.js over the C ABI (librgtp.so), with koffi.
//
// Exposes a temporary file on 127.0.0.1, pulls it back with a progress callback,
// checks the bytes, and checks that a wrong key gives RGTP_E_KEY_MISMATCH.
//
//   cargo build --release -p rgtp-capi
//   cd examples/node && npm install && RGTP_LIB=../../target/release/librgtp.so node pull_and_expose.mjs
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import koffi from 'koffi';

const libPath = process.env.RGTP_LIB ?? path.resolve(import.meta.dirname ?? '.', '../../target/release/librgtp.so');
const lib = koffi.load(libPath);

// The declarations of include/rgtp.h that this example uses.
koffi.opaque('rgtp_exposer');
koffi.struct('rgtp_expose_options', {
  key_path: 'const char *',
  advertise: 'const char *',
  cache_dir: 'const char *',
  max_datagram: 'uint16_t',
  seal_on_demand: 'uint8_t',
});
koffi.struct('rgtp_pull_options', {
  key_hex: 'const char *',
  known_exposers: 'const char *',
  max_datagram: 'uint16_t',
  connect_timeout_ms: 'uint32_t',
  idle_timeout_ms: 'uint32_t',
  verify_thread: 'int',
  from: 'const char **',
  from_count: 'size_t',
  fec: 'const char *',
  share: 'int',
  share_port: 'uint16_t',
  seed_secs: 'uint32_t',
});
koffi.struct('rgtp_progress', {
  kind: 'int',
  stored: 'uint64_t',
  total: 'uint64_t',
  missing_at_start: 'uint64_t',
  elapsed: 'double',
  srtt: 'double',
  damaged_chunks: 'uint64_t',
  exposer_key: koffi.array('uint8_t', 32),
  share_port: 'uint16_t',
  seed_secs: 'uint64_t',
});
koffi.struct('rgtp_pull_report', {
  bytes: 'uint64_t',
  seconds: 'double',
  throughput: 'double',
  missing_bytes_at_start: 'uint64_t',
  resumed: 'uint8_t',
  root: koffi.array('uint8_t', 32),
  exposer_key: koffi.array('uint8_t', 32),
  datagrams_received: 'uint64_t',
  bytes_received: 'uint64_t',
  datagrams_sent: 'uint64_t',
  requests: 'uint64_t',
  rerequested_fragments: 'uint64_t',
  duplicate_fragments: 'uint64_t',
  spurious_losses: 'uint64_t',
  bad_chunks: 'uint64_t',
  handshakes: 'uint64_t',
  repair_fragments: 'uint64_t',
  chunks_repaired: 'uint64_t',
  surplus_repair_fragments: 'uint64_t',
  cipher: koffi.array('char', 24, 'String'),
  sources: 'uint32_t',
  sources_dropped: 'uint64_t',
  share_port: 'uint16_t',
  share_bytes_sent: 'uint64_t',
});
const ProgressCb = koffi.proto('int rgtp_progress_cb(const rgtp_progress *p, void *user)');

const rgtp = {
  version: lib.func('const char *rgtp_version(void)'),
  statusName: lib.func('const char *rgtp_status_name(int code)'),
  pull: lib.func('int rgtp_pull(const char *url, const char *out_path, _Out_ uint8_t *err, size_t errlen)'),
  pullEx: lib.func(
    'int rgtp_pull_ex(const char *url, const char *out_path, const rgtp_pull_options *opts, ' +
      'rgtp_progress_cb *progress, void *user, void *cancel, _Out_ rgtp_pull_report *report, ' +
      '_Out_ uint8_t *err, size_t errlen)',
  ),
  exposeStart: lib.func(
    'int rgtp_expose_start(const char *path, const char *bind, uint16_t port, ' +
      'const rgtp_expose_options *opts, _Out_ rgtp_exposer **out, _Out_ uint8_t *err, size_t errlen)',
  ),
  exposerUrl: lib.func('size_t rgtp_exposer_url(const rgtp_exposer *e, _Out_ uint8_t *buf, size_t buflen)'),
  exposerStop: lib.func('int rgtp_exposer_stop(const rgtp_exposer *e, _Out_ uint8_t *err, size_t errlen)'),
  exposerFree: lib.func('void rgtp_exposer_free(rgtp_exposer *e)'),
};
const RGTP_OK = 0;
const RGTP_E_KEY_MISMATCH = 6;
const RGTP_PROGRESS_WAITING = 0;

const cstr = (buf) => buf.subarray(0, buf.indexOf(0)).toString('utf8');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rgtp-node-'));
try {
  const src = path.join(dir, 'data.bin');
  const data = crypto.randomBytes(4 * 1024 * 1024 + 77);
  fs.writeFileSync(src, data);
  console.log(`librgtp ${rgtp.version()} (${libPath})`);

  const err = Buffer.alloc(512);
  const out = [null];
  const eo = { key_path: path.join(dir, 'exposer.key'), advertise: null, cache_dir: dir, max_datagram: 0, seal_on_demand: 0 };
  let rc = rgtp.exposeStart(src, '127.0.0.1', 0, eo, out, err, err.length);
  assert.equal(rc, RGTP_OK, `expose: ${cstr(err)}`);
  const ex = out[0];
  const n = Number(rgtp.exposerUrl(ex, null, 0));
  const urlBuf = Buffer.alloc(n + 1);
  rgtp.exposerUrl(ex, urlBuf, urlBuf.length);
  const url = cstr(urlBuf);
  console.log(`exposing ${url}`);

  const dest = path.join(dir, 'copy.bin');
  rc = rgtp.pull(url, dest, err, err.length);
  assert.equal(rc, RGTP_OK, `pull: ${cstr(err)}`);
  assert.ok(fs.readFileSync(dest).equals(data), 'pulled bytes differ');

  // Options, a progress callback (called on this thread, during the call) and the report.
  let calls = 0;
  const cb = koffi.register((p) => {
    calls++;
    assert.ok(p.kind >= RGTP_PROGRESS_WAITING);
    return 0;
  }, koffi.pointer(ProgressCb));
  const report = {};
  const po = {
    key_hex: null, known_exposers: path.join(dir, 'known'), max_datagram: 0, connect_timeout_ms: 0,
    idle_timeout_ms: 0, verify_thread: 0, from: null, from_count: 0, fec: '4:2', share: 0, share_port: 0,
    seed_secs: 0,
  };
  const dest2 = path.join(dir, 'copy2.bin');
  rc = rgtp.pullEx(url, dest2, po, cb, null, null, report, err, err.length);
  koffi.unregister(cb);
  assert.equal(rc, RGTP_OK, `pull_ex: ${cstr(err)}`);
  assert.ok(fs.readFileSync(dest2).equals(data), 'pulled bytes differ (pull_ex)');
  assert.equal(Number(report.bytes), data.length);
  assert.ok(['aes-256-gcm', 'chacha20-poly1305'].includes(report.cipher), `cipher ${report.cipher}`);
  assert.ok(Number(report.repair_fragments) + Number(report.surplus_repair_fragments) > 0, 'fec 4:2: no repair');
  po.fec = null;
  console.log(`pulled ${report.bytes} bytes in ${report.seconds.toFixed(3)} s, ${calls} progress calls`);

  po.key_hex = '00'.repeat(31) + '01';
  rc = rgtp.pullEx(url, path.join(dir, 'copy3.bin'), po, null, null, null, report, err, err.length);
  assert.equal(rc, RGTP_E_KEY_MISMATCH, `wrong key: ${rc} ${cstr(err)}`);
  console.log(`wrong key -> ${rgtp.statusName(rc)}`);

  assert.equal(rgtp.exposerStop(ex, err, err.length), RGTP_OK, cstr(err));
  rgtp.exposerFree(ex);
  console.log('Node example: all checks passed');
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
