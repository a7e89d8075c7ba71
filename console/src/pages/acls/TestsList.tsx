// The results of the policy's `tests` block, as the server's check reports
// them: every expectation with its outcome; a click goes to its line.
export interface TestResult {
  line: number;
  col: number;
  test: number;
  src: string;
  proto?: string;
  dst: string;
  expect: 'accept' | 'deny';
  pass: boolean;
  message: string;
}

export default function TestsList({ tests, onJump }: { tests: TestResult[]; onJump: (line: number, col: number) => void }) {
  if (tests.length === 0) return <p className="muted small" data-tests="none">The policy has no tests. Add a <code>"tests"</code> block to check expectations on every save.</p>;
  const failed = tests.filter((t) => !t.pass).length;
  return (
    <section aria-label="Test results">
      <h2 className="small-h">Tests: {tests.length - failed} of {tests.length} passed</h2>
      <table className="grid compact tests">
        <thead><tr><th scope="col">Result</th><th scope="col">Source</th><th scope="col">Expects</th><th scope="col">Destination</th><th scope="col">Detail</th></tr></thead>
        <tbody>
          {tests.map((t, i) => (
            <tr key={i} data-test-result={t.pass ? 'pass' : 'fail'}>
              <td><span className={`badge ${t.pass ? 'ok' : 'bad'}`}>{t.pass ? 'pass' : 'fail'}</span></td>
              <td className="mono">{t.src}{t.proto ? ` (${t.proto})` : ''}</td>
              <td>{t.expect === 'accept' ? 'allowed' : 'denied'}</td>
              <td className="mono">{t.dst}</td>
              <td className="small">
                <button type="button" className="link mono" onClick={() => onJump(t.line, t.col)}>Line {t.line}</button>
                {!t.pass && <>: <span>{t.message}</span></>}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
