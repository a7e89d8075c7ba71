// The policy of issue 11: 20 000 `hosts` entries and one ACL from the first
// 10 000 of them to the other 10 000 (about 750 KB), plus the 1 024 /24 routes
// its router approves. Shared by the isolation test and bench/compilepool.ts.

/** Host i's address lies inside the router's route number i mod 1 024 (see routerRoutes). */
const hostAddr = (i: number): string => `10.${(i & 1023) >> 8}.${i & 255}.${2 + (i >> 10)}`;

export function bigPolicy(hosts = 20_000): string {
  const half = hosts / 2;
  const lines: string[] = [];
  for (let i = 0; i < hosts; i++) lines.push(`    "h${i}": "${hostAddr(i)}",`);
  const src: string[] = [];
  const dst: string[] = [];
  for (let i = 0; i < half; i++) src.push(`"h${i}"`);
  for (let i = half; i < hosts; i++) dst.push(`"h${i}:*"`);
  return `// issue 11: ${hosts} hosts, one ACL between the two halves
{
  "hosts": {
${lines.join('\n')}
  },
  "acls": [
    { "action": "accept", "src": [${src.join(', ')}], "dst": [${dst.join(', ')}] },
  ],
}
`;
}

/** The router's 1 024 approved /24 routes: 10.0.0.0/24 … 10.3.255.0/24. */
export function routerRoutes(n = 1024): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(`10.${i >> 8}.${i & 255}.0/24`);
  return out;
}
