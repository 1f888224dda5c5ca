// conduit-client imports React for its useStream hook; ConduitClient itself never calls it.
// The import map of client.html points "react" here so the package loads without a bundler.
const unused = () => {
  throw new Error("React is not loaded on this test page");
};
export const useEffect = unused;
export const useRef = unused;
export const useState = unused;
