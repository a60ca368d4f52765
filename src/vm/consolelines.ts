/**
 * Splits the guest's console byte stream into lines, for the markers the VM process watches
 * (the guest is ready, the guest powered off). A line longer than `maxLength` is cut there.
 */
export class ConsoleLines {
  private tail = "";

  constructor(
    private readonly onLine: (line: string) => void,
    private readonly maxLength = 200,
  ) {}

  push(byte: number): void {
    if (byte === 0x0a) {
      this.emit();
      return;
    }
    this.tail += String.fromCharCode(byte);
    if (this.tail.length >= this.maxLength) this.emit();
  }

  private emit(): void {
    const line = this.tail;
    this.tail = "";
    this.onLine(line);
  }
}
