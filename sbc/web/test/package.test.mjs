// The npm package: its manifest, what `npm pack` puts in the tarball, the TypeScript
// declarations (tsc --strict on the typed and React examples, and a file that must fail), and
// the declarations against the runtime (every class member and export, both ways).

import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, existsSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { ensureDevDeps, webDir } from './devdeps.mjs';
import * as sdk from '../operator.js';
import * as compat from '../compat.js';
import { makeEnv, makeOperator } from './fakes.mjs';

const pkg = JSON.parse(readFileSync(`${webDir}package.json`, 'utf8'));
const deps = ensureDevDeps();
const skip = deps.ok ? false : deps.reason;

describe('package manifest', () => {
  test('version tied to the protocol, ESM exports with types, React an optional peer', () => {
    assert.equal(pkg.name, '@sbc/operator-sdk');
    assert.equal(Number(pkg.version.split('.')[0]), sdk.PROTOCOL_VERSION, 'major = protocol version');
    assert.equal(sdk.VERSION, pkg.version, 'operator.js says the same version');
    assert.equal(pkg.type, 'module');
    assert.deepEqual(Object.keys(pkg.exports), ['.', './compat', './react', './package.json']);
    for (const [key, entry] of Object.entries(pkg.exports)) {
      if (typeof entry === 'string') continue;
      assert.deepEqual(Object.keys(entry), ['types', 'default'], `${key}: types first`);
      for (const file of Object.values(entry)) {
        assert.ok(existsSync(`${webDir}${file}`), `${key} -> ${file}`);
        assert.ok(pkg.files.includes(file.slice(2)), `${file} is in files`);
      }
    }
    assert.deepEqual(pkg.dependencies ?? {}, {}, 'no runtime dependencies');
    assert.equal(pkg.peerDependenciesMeta.react.optional, true);
    assert.equal(pkg.sideEffects, false);
    assert.ok(existsSync(`${webDir}package-lock.json`), 'devDependencies are locked');
  });

  test('operator.js and compat.js import nothing outside the package', () => {
    for (const file of ['operator.js', 'compat.js']) {
      const src = readFileSync(`${webDir}${file}`, 'utf8');
      const imports = [...src.matchAll(/^\s*import\s[^'"]*['"]([^'"]+)['"]/gm)].map((m) => m[1]);
      for (const spec of imports) assert.match(spec, /^\.\//, `${file} imports ${spec}`);
    }
    const react = readFileSync(`${webDir}react.js`, 'utf8');
    assert.deepEqual([...react.matchAll(/^import .* from '([^']+)';$/gm)].map((m) => m[1]).sort(), ['./operator.js', 'react']);
  });
});

describe('npm pack', () => {
  test('the tarball holds what a consumer needs and nothing else', () => {
    const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: webDir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const [info] = JSON.parse(out);
    const files = info.files.map((f) => f.path).sort();
    assert.deepEqual(files, ['README.md', 'compat.d.ts', 'compat.js', 'operator.d.ts', 'operator.js', 'package.json', 'react.d.ts', 'react.js']);
    assert.equal(info.name, '@sbc/operator-sdk');
    assert.equal(info.version, pkg.version);
  });
});

describe('TypeScript declarations', { skip }, () => {
  let tsc;
  let ts;
  before(() => {
    if (!deps.ok) return;
    tsc = `${webDir}node_modules/typescript/bin/tsc`;
    ts = createRequire(`${webDir}package.json`)('typescript');
  });

  for (const example of ['typed', 'react']) {
    test(`tsc --noEmit --strict passes on examples/${example}`, () => {
      const r = spawnSync(process.execPath, [tsc, '-p', `examples/${example}`], { cwd: webDir, encoding: 'utf8' });
      assert.equal(r.status, 0, r.stdout + r.stderr);
    });
  }

  test("the README's browser snippet type-checks against the declarations", () => {
    // README.md, "Browser operators": its js block, importing this package instead of the URL.
    const readme = readFileSync(`${webDir}../../README.md`, 'utf8');
    const section = readme.split('## Browser operators')[1];
    assert.ok(section, 'README has a "Browser operators" section');
    const block = section.match(/```js\n([\s\S]*?)```/);
    assert.ok(block, 'with a js block');
    const url = 'https://sbc.example.com/sdk/operator.js';
    assert.ok(block[1].includes(`from '${url}'`), `the snippet imports ${url}`);
    const dir = mkdtempSync(`${webDir}test/.readme-`);
    try {
      const file = `${dir}/snippet.mts`;
      const page = 'declare const acceptButton: HTMLButtonElement, rejectButton: HTMLButtonElement, audio: HTMLAudioElement;\n';
      writeFileSync(file, page + block[1].replace(url, '../../operator.js'));
      const r = spawnSync(process.execPath, [tsc, '--noEmit', '--strict', '--module', 'NodeNext', '--moduleResolution', 'NodeNext', '--target', 'ES2022', '--lib', 'ES2022,DOM', file], {
        cwd: webDir,
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, r.stdout + r.stderr);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('misuse does not type-check', () => {
    const r = spawnSync(process.execPath, [tsc, '--noEmit', '--strict', '--module', 'NodeNext', '--moduleResolution', 'NodeNext', '--target', 'ES2022', '--lib', 'ES2022,DOM', 'test/fixtures/typed-bad.ts'], {
      cwd: webDir,
      encoding: 'utf8',
    });
    assert.notEqual(r.status, 0);
    for (const code of ['TS2322', 'TS2551', 'TS2345']) assert.match(r.stdout, new RegExp(code), `expected ${code} in:\n${r.stdout}`);
  });

  /** {exports: Set, classes: Map(name -> {members: Set, statics: Set})} declared in a .d.ts. */
  function declared(file) {
    const src = ts.createSourceFile(file, readFileSync(`${webDir}${file}`, 'utf8'), ts.ScriptTarget.ES2022, true);
    const exports = new Set();
    const classes = new Map();
    const isExported = (n) => n.modifiers?.some((m) => m.kind === ts.SyntaxKind.ExportKeyword);
    for (const n of src.statements) {
      if ((ts.isClassDeclaration(n) || ts.isFunctionDeclaration(n)) && n.name) {
        if (isExported(n)) exports.add(n.name.text);
        if (ts.isClassDeclaration(n)) {
          const members = new Set();
          const statics = new Set();
          for (const m of n.members) {
            if (!m.name || ts.isConstructorDeclaration(m)) continue;
            (m.modifiers?.some((x) => x.kind === ts.SyntaxKind.StaticKeyword) ? statics : members).add(m.name.text);
          }
          classes.set(n.name.text, { members, statics });
        }
      }
      if (ts.isVariableStatement(n) && isExported(n)) for (const d of n.declarationList.declarations) exports.add(d.name.text);
      if (ts.isExportDeclaration(n) && n.exportClause && !n.isTypeOnly) for (const e of n.exportClause.elements) exports.add(e.name.text);
      if (ts.isExportAssignment(n)) exports.add('default');
      if (n.modifiers?.some((m) => m.kind === ts.SyntaxKind.DefaultKeyword)) exports.add('default');
    }
    return { exports, classes };
  }

  /** Public members of a runtime object: own fields and prototype methods/getters, no `_`. */
  function publicMembers(obj, stopAt) {
    const names = new Set(Object.keys(obj).filter((k) => !k.startsWith('_')));
    for (let p = Object.getPrototypeOf(obj); p && p !== stopAt; p = Object.getPrototypeOf(p)) {
      for (const k of Object.getOwnPropertyNames(p)) if (k !== 'constructor' && !k.startsWith('_')) names.add(k);
    }
    return names;
  }

  test('operator.d.ts matches operator.js: exports, and every member of every class, both ways', () => {
    const d = declared('operator.d.ts');
    const runtimeExports = new Set(Object.keys(sdk));
    assert.deepEqual([...d.exports].sort(), [...runtimeExports].sort());
    const env = makeEnv();
    const { op } = makeOperator(env);
    const instances = {
      Operator: op,
      Call: new sdk.Call(op, { direction: 'inbound', state: 'ringing' }),
      MonitorCall: new sdk.MonitorCall(op, { callId: 'c', state: 'connecting', mode: 'listen' }),
    };
    const emitterMethods = new Set(['on', 'off', 'once']);
    for (const [name, obj] of Object.entries(instances)) {
      const decl = d.classes.get(name);
      const inherited = name === 'MonitorCall' ? d.classes.get('Call').members : new Set();
      const want = new Set([...decl.members, ...inherited, ...emitterMethods]);
      const have = publicMembers(obj, Object.prototype);
      assert.deepEqual([...have].filter((k) => !want.has(k)).sort(), [], `${name}: undeclared public members`);
      assert.deepEqual([...want].filter((k) => !have.has(k)).sort(), [], `${name}: declared but missing`);
      for (const s of decl.statics) assert.equal(typeof sdk[name][s], 'function', `${name}.${s}`);
    }
    const err = new sdk.OperatorError('BUSY', 'x');
    for (const k of ['code', 'name', 'message']) assert.ok(k in err);
  });

  test('compat.d.ts and react.d.ts export what the modules export', async () => {
    const c = declared('compat.d.ts');
    assert.deepEqual([...c.exports].sort(), Object.keys(compat).sort());
    const wrapper = new compat.OperatorCall(new sdk.Call(makeOperator(makeEnv()).op, { direction: 'inbound', state: 'ringing' }));
    const have = publicMembers(wrapper, Object.prototype);
    assert.deepEqual([...have].sort(), [...c.classes.get('OperatorCall').members].sort());
    const r = declared('react.d.ts');
    const react = await import('../react.js');
    assert.deepEqual([...r.exports].sort(), Object.keys(react).sort());
  });
});
