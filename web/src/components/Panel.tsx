/** Building blocks of every view: a titled panel with a count, and an error line. */
import type { ReactNode } from "react";

/** A section with a heading ("Hosts 3"), labelled by it for screen readers. */
export function Panel(props: { id: string; title: string; count?: number; className?: string; children?: ReactNode }): React.JSX.Element {
  return (
    <section className={props.className !== undefined ? `panel ${props.className}` : "panel"} aria-labelledby={props.id}>
      <h2 id={props.id}>
        {props.title}
        {props.count !== undefined ? (
          <>
            {" "}
            <span className="count">{props.count}</span>
          </>
        ) : null}
      </h2>
      {props.children}
    </section>
  );
}

/** The error of the last action or load, announced to screen readers; nothing when there is none. */
export function ErrorNote({ error, testId }: { error: string | undefined; testId?: string }): React.JSX.Element | null {
  if (error === undefined) return null;
  return (
    <p className="error" role="alert" {...(testId !== undefined ? { "data-testid": testId } : {})}>
      {error}
    </p>
  );
}
