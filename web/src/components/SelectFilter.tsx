/** One filter of a filter bar: a labelled select whose first choice, "any", is the empty string. */
export function SelectFilter<T extends string>(props: { label: string; name: string; value: T | ""; options: readonly T[]; onChange: (value: T | "") => void }): React.JSX.Element {
  return (
    <label className="field">
      <span>{props.label}</span>
      <select name={props.name} value={props.value} onChange={(e) => props.onChange(e.target.value as T | "")}>
        <option value="">any</option>
        {props.options.map((o) => (
          <option key={o}>{o}</option>
        ))}
      </select>
    </label>
  );
}
