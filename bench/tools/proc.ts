// Process CPU time from /proc, for the benchmarks that report the CPU of the
// daemons they measure.
import { readFileSync } from 'node:fs';

/** Clock ticks per second of /proc/<pid>/stat's times (USER_HZ). */
export const HZ = 100;

/** utime + stime of a process, all its threads, in clock ticks (throws when it is gone). */
export function cpuTicks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // After the command name (which may hold spaces), field 3 onwards: utime and stime are fields 14 and 15.
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return Number(rest[11]) + Number(rest[12]);
}
